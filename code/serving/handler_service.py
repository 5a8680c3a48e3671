"""What each model-server worker runs: sagemaker-inference's Transformer around ``inference.py``.

MMS loads ``serving.handler_service:handle`` (``model_server.HANDLER``), calls
``handle(None, context)`` once to load the model, then ``handle(requests, context)`` for every
request. A function entry point, not a handler class, because MMS logs and swallows a handler
class's ``initialize`` errors and then reports the worker ready without a model; an error raised
here fails the worker's load instead, and the worker tells the gateway (``serving.worker_state``)
whether it is ready or why not.

Errors go back as JSON ``{"code", "type", "message"}`` with their status (4xx for a bad request,
from ``inference.RequestError``), without the stack trace the Transformer would put in the body.
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus

from sagemaker_inference import content_types, utils
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.errors import GenericInferenceToolkitError
from sagemaker_inference.transformer import Transformer

from serving import worker_state
from serving.errors import error_body

logger = logging.getLogger(__name__)


class JsonErrorTransformer(Transformer):
    """The Transformer with JSON error responses and a 400 for a text body that is not UTF-8."""

    @staticmethod
    def handle_error(context, inference_exception, trace):
        status, message = inference_exception.status_code, inference_exception.message
        if status >= 500:
            logger.error("request failed (%d): %s\n%s", status, message, trace)
        else:
            logger.info("request refused (%d): %s", status, message)
        context.set_response_status(code=status, phrase=utils.remove_crlf(inference_exception.phrase))
        context.set_response_content_type(0, content_types.JSON)
        return [error_body(status, message)]

    def transform(self, data, context):
        # The base class decodes JSON and CSV bodies itself and answers 500 when they are not UTF-8.
        headers = context.request_processor[0].get_request_properties()
        if utils.retrieve_content_type_header(headers) in content_types.UTF8_TYPES:
            for request in data:
                body = request.get("body")
                try:
                    if isinstance(body, bytes | bytearray):
                        bytes(body).decode("utf-8")
                except UnicodeDecodeError as error:
                    message = f"malformed JSON: the body is not UTF-8 text ({error})"
                    return self.handle_error(
                        context, GenericInferenceToolkitError(HTTPStatus.BAD_REQUEST, message), ""
                    )
        return super().transform(data, context)


_service = DefaultHandlerService(transformer=JsonErrorTransformer())


def handle(data, context):
    """MMS's entry point: loads the model when ``data`` is None, else answers the requests."""
    if data is not None:
        return _service.handle(data, context)
    worker_state.record_worker_parent()
    try:
        _service.initialize(context)
    except Exception as error:
        model_dir = os.path.realpath(context.system_properties.get("model_dir"))
        reason = f"model failed to load from {model_dir}: {error}"
        logger.error("%s", reason, exc_info=True)
        worker_state.record_failure(reason)
        raise
    worker_state.mark_ready()
    logger.info("model loaded and warmed up in worker %d", os.getpid())
    return None
