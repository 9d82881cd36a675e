"""Job functions: parse the payload, call one service, record the outcome."""
