# Offline stand-in for get-pip.py: bootstrap pip from the interpreter's bundled ensurepip wheel.
import ensurepip
ensurepip.bootstrap(upgrade=True)
