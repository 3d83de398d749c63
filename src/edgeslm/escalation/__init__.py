"""Escalation: the policy that hands unsure answers to a cloud model (``policy``), the calibration of
the confidence that triggers it (``calibration``) and the targets it hands them to (``targets``).

Nothing here touches the network unless an application builds an :class:`~edgeslm.Escalation` with
a target and passes it to a call.
"""
