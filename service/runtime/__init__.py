"""What a process is configured with: DSCM_* settings, hospital integrations, logging, and the
``StainSpec`` the edges build from the settings for the engine.
"""
