"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a missing file, a bad flag value, a corrupt or wrong-kind checkpoint."""

    exit_status = 2


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""

    exit_status = 1
