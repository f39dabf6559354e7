from e2urec.cli import app

if __name__ == "__main__":  # `python -m e2urec.cli`; importing this module runs nothing
    app()
