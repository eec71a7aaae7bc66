"""SeqGAN Studio: SeqGAN (Yu et al., AAAI 2017) as a library, a command line and an app."""

__version__ = "0.1.0"
