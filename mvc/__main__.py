import sys

from mvc.cli import main

if __name__ == "__main__":
    sys.exit(main())
