"""The exception for expected training failures: its message becomes ``output/failure``."""


class TrainingError(Exception):
    """A failure the user can fix (bad data, bad hyperparameters, missing files, diverged training).

    The message says what is wrong and, where it helps, what to do; the training entry writes
    it to ``output/failure``, which SageMaker shows as the job's FailureReason.
    """


class DatasetError(TrainingError):
    """The dataset breaks the rules of ``classifier.dataset`` (layout, classes, images)."""
