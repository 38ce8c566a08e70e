from chatgpt_proxy.cli import main

main()
