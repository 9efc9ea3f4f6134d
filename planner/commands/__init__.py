"""The commands (cli and its option parsing and fast start-up) and the libraries behind them:
the Python API, attach, audit (`diff`), compare and fleet. They use every layer below."""
