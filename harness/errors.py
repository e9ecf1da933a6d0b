"""The one exception type that reaches users as a message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong name, value or file.

    The CLI prints the message as one paragraph and exits with status 2, so the message
    must say what was wrong and what the valid choices are.
    """
