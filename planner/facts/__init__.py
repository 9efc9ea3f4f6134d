"""What every layer stands on: the machine, controller, device, firmware and libvirt-version
facts read from models/*.toml (facts.py), the plan's options, and the errors and exit codes.
A new controller model or firmware is data in models/*.toml, read here."""
