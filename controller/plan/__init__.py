"""Pure decisions: rollout status, actions, analysis, and the rollout state machine."""
