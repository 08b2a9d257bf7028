from deft_clean.cli import main

if __name__ == "__main__":
    main()
