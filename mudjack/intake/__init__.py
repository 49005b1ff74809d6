"""Intake: bug reports -> accepted bugs (reproduce, reverse-engineer the trigger, verify it).

decision.py holds the flow for one report, reverse.py the reversal methods by name
(occlusion.py, grow.py, inversion.py, text.py; mask helpers in masks.py), verify.py the
backdoor checks (trial.py the trigger against its null, key.py and departure.py the checks
that follow it), merge.py an inbox's decisions with duplicates merged.
"""

from mudjack.intake.decision import Decision, IntakeParams, intake_report, pick_reference
from mudjack.intake.merge import Intake, summary
from mudjack.intake.reverse import REVERSAL_METHODS, ReverseParams, register_reversal, reverse_engineer
from mudjack.intake.verify import Verification, VerifyParams, verify_trigger

__all__ = ["REVERSAL_METHODS", "Decision", "Intake", "IntakeParams", "ReverseParams", "Verification",
           "VerifyParams", "intake_report", "pick_reference", "register_reversal", "reverse_engineer",
           "summary", "verify_trigger"]
