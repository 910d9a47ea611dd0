"""The peer systems next to D²VLM (lesson ``08_peers``): their mechanisms, which plug into the core model.

The core (lesson ``02_model``) has two hook points, each an object a variant resolves to
(:mod:`d2lib.vlm.tokens`): a **time representation** (:class:`d2lib.vlm.tokens.TimeRep` — how a span is
written as text and read back, the question's wording, text before each frame token, the frames as the
tower sees them, an optional per-frame embedding module) and a **token budget**
(:class:`d2lib.vlm.tokens.TokenBudget` — how many frame tokens a video gets, which covers each second,
keep masks from the pixels, the tokens that fill the slots, an optional pooling module). The core holds
D²VLM's own (seconds, one token per second) and imports nothing from this package; a variant that
switches a peer's mechanism on resolves, through a ``"module:name"`` path imported only then
(:data:`d2lib.vlm.tokens.TIME_PLUGIN` / :data:`~d2lib.vlm.tokens.BUDGET_PLUGIN`), to:

- :mod:`d2lib.peers.timerep` — :class:`~d2lib.peers.timerep.PeerTimes`: NumPro, VTimeLLM, VTG-LLM,
  TimeMarker, TimeChat;
- :mod:`d2lib.peers.tokenbudget` — :func:`~d2lib.peers.tokenbudget.for_variant`: DiffFP, MovieChat, STC.

A new mechanism is a new variant switch plus an implementation of the hooks it changes. Not a mechanism:
:mod:`d2lib.peers.univtg`, a grounding specialist trained and scored on its own.
"""
