"""Core layer: timeframes, ticks, candles and the aggregation engine. No IPython imports here."""
