"""skewless's example feature repository: a shop's users, their orders and a CRM profile snapshot.

`skewless plan` imports every module here and validates all definitions together (docs/definitions.md).
"""
