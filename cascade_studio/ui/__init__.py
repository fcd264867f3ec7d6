"""Widgets only: the main window, panels and dialogs. State lives in `state/`, work in `workers/`."""
