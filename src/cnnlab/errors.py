"""The one exception type for bad user input: the CLIs print its message without a traceback."""


class ConfigError(ValueError):
    """A config value, override or file the user supplied cannot be used.

    The message names the offending key (or file), the bad value and what is accepted.
    """

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in the config:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)
