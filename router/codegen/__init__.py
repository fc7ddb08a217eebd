"""Files generated from the event contracts in :mod:`router.core`.

``python -m router.codegen`` (``just generate``) writes the TypeScript types and the mapping
document; ``python -m router.codegen --check`` fails when either is stale. The renderers are pure:
they return text and never touch the file system.
"""
