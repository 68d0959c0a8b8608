"""``python -m services.executor.builtin_worker --result RESULT_PATH``: see the package."""

from services.executor.builtin_worker.main import main

if __name__ == "__main__":
    main()
