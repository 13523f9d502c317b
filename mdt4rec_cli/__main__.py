from mdt4rec_cli.main import main

main()
