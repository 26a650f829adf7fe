"""Feeds layer: sources of ticks (replay tapes, the Kite WebSocket, the simulator)."""
