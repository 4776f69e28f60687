"""Scope and safety wording, defined once and imported by the chain, the UI and the tests."""

#: The refusal phrase. Every abstention starts with it.
REFUSAL = "I can't answer that from the indexed literature."

#: Prefix for requests about an individual patient (dosing, prognosis, stopping a drug).
PERSONAL_ADVICE = (
    "I can't advise on an individual patient's care; decisions about a specific person belong "
    "with their treating clinicians."
)

#: Introduces the cited general guidance given after a personal-advice refusal.
GENERAL_GUIDANCE_INTRO = "What the indexed literature says in general:"

#: Introduces what the sources do say when the asked-for result is not reported in them.
NOT_REPORTED_INTRO = "What the indexed literature does say:"

#: Abstention reasons, as they appear in the ``reason`` field of an answer.
REASON_OUT_OF_SCOPE = "out_of_scope"
REASON_INSUFFICIENT = "insufficient_evidence"
REASON_PATIENT_SPECIFIC = "patient_specific"
REASON_UNVERIFIED = "unverified"
REASON_NOT_REPORTED = "not_reported"
