"""Observable Qt models the widgets bind to (session, queue, gallery list). No torch, no widgets."""
