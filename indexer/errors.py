"""The one error type whose message is meant for the user."""


class MyoQAError(Exception):
    """A problem the user can fix; the message says what happened and what to do.

    The CLI prints it without a traceback (set ``MYOQA_DEBUG=1`` to re-raise),
    the API turns it into a 4xx JSON error and the chat shows it as ``gr.Error``.
    """
