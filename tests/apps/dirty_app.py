"""A minimal gunicorn dirty app, so tests can check dirty workers are not HTTP workers."""

from gunicorn.dirty.app import DirtyApp


class Dirty(DirtyApp):
    def __call__(self, action, *args, **kwargs):
        return {"action": action}
