"""Investigation: an agent that tests hypotheses about a unit with typed tools on the live model.

`tools.py` (typed tools, the explain split), `reader.py` (activations on new texts), `loop.py` (the
agent loop, budget, storage, scoring of the final explanation), `chat.py` (the terminal conversation).
"""

from autointerp.agent.loop import AgentSettings, Outcome, ainvestigate, investigate

__all__ = ["AgentSettings", "Outcome", "ainvestigate", "investigate"]
