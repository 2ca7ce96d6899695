"""Event and output records: the one source of truth for shopstream's data.

Every record is a ``msgspec.Struct``; :mod:`schemas.codec` decodes bytes
strictly into them and raises only :class:`schemas.errors.SchemaError`.
"""
