"""The payer simulator: answers 270s from a member database (the member data -> 271 direction is pure)."""
