"""How 270/271 interchanges travel between the gateway and a payer: CAQH CORE connectivity envelopes."""
