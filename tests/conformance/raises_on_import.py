"""A module that fails as it is imported, as a user's oracle or model module may."""

raise RuntimeError("this module fails at import")
