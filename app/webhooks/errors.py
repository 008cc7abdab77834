from app.errors import InvalidRequest, NotFound


class WebhookEndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"


class WebhookUrlNotAllowed(InvalidRequest):
    code = "webhook_url_not_allowed"
    title = "Webhook URL not allowed"


class EventNotFound(NotFound):
    code = "event_not_found"
