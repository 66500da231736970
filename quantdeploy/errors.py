"""The only errors users see. The CLI turns each into one line and a non-zero exit."""


class QuantDeployError(Exception):
    """Base class: the message says what went wrong and what to do."""

    exit_code = 1


class UsageError(QuantDeployError):
    """Bad input from the user (a flag, an argument, a value)."""

    exit_code = 2


class RequestError(UsageError):
    """Bad input in one field of a generation request (a schema, a tool, a message); `param` names the field,
    dotted as in the OpenAI API (`response_format.json_schema.schema`), so that the server's 400 can say which."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelNotFound(QuantDeployError):
    """A path, pulled name or repo that does not exist."""


class InvalidModel(QuantDeployError):
    """Files exist but are not a loadable model (bad config, truncated weights, garbage GGUF)."""


class UnsupportedFormat(QuantDeployError):
    """A format or quant method no backend handles."""


class BackendUnavailable(QuantDeployError):
    """A backend's optional dependency or hardware is missing; the message names the fix."""


class DownloadError(QuantDeployError):
    """A pull that failed (network, auth, checksum, disk)."""
