"""Teacher-output caches: run the teacher once, read its outputs back in every training step."""

from detkd.cache.fingerprint import array_digest, file_digest, module_checksum
from detkd.cache.store import CacheBuildReport, CacheField, CacheWriter, TeacherCacheError, TeacherOutputCache

__all__ = [
    "CacheBuildReport", "CacheField", "CacheWriter", "TeacherCacheError", "TeacherOutputCache", "array_digest",
    "file_digest", "module_checksum",
]
