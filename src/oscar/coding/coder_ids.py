"""The coder ids a file's header may carry (``oscar.coding.entropy`` implements the coders). Kept
apart so that parsing a header (``oscar info FILE``) imports neither numpy nor the range coder."""

FIXED_CODER_ID = 0
PRIOR_CODER_ID = 1
CODER_NAMES = {FIXED_CODER_ID: "fixed", PRIOR_CODER_ID: "entropy"}
