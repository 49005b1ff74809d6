"""Attacks, used only to build backdoored encoders for evaluation: BadEncoder and the zoo of
trigger families it can plant."""

from mudjack.attacks.badencoder import (
    BadEncoderParams,
    Pairs,
    badencoder,
    badencoder_loss,
    badencoder_steps,
    badencoder_text,
    make_optimiser,
    pick_attack_reference,
    pick_confident_reference,
    pick_reference,
    steps_per_epoch,
    train_mode,
)

__all__ = ["BadEncoderParams", "Pairs", "badencoder", "badencoder_loss", "badencoder_steps",
           "badencoder_text", "make_optimiser", "pick_attack_reference", "pick_confident_reference",
           "pick_reference", "steps_per_epoch", "train_mode"]
