"""Atlas-mode bundle recognition for real data (no ground truth), one module per recogniser.

Every atlas comes from a path the user gives; nothing is downloaded. Each method returns a
:class:`~.common.AtlasRecognition` (one label per streamline + the shared metrics summary of
:func:`gentract_bids.evaluation.metrics.summarise`):

1. :mod:`.waypoints` — waypoint ROIs in subject space, pyAFQ-style semantics (own, vectorised).
2. :mod:`.recobundles` — dipy's RecoBundles with the user's model bundles.
3. :mod:`.pyafq` — pyAFQ's own ``recognize`` (optional extra ``afq``: pyAFQ==3.4).
4. :mod:`.bundleseg` — scilpy's BundleSeg run as a subprocess.
5. :mod:`.endings` — a TractSeg-layout atlas (bundle masks + begin/end regions) in the model's
   template space, mapped into the subject through the registration.

Shared pieces (labels :data:`UNRECOGNIZED`/:data:`DEGENERATE`, conflict resolution) live in
:mod:`.common`. Import the functions from their modules.
"""
