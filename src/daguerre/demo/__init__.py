"""The demo: tiny random-weight models of the real architectures, built locally, and what `serve --demo` installs."""
