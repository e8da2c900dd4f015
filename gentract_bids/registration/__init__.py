"""Registration of a subject to the model's space (the template a checkpoint carries).

:mod:`.template` — the model's template (reference FA + brain mask on the canonical grid, placed in
its own world space, e.g. MNI) and how it is made; :mod:`.affine` — FA of a DWI series and the
robust affine registration (dipy ``imaffine``: centre of mass -> translation -> rigid -> affine,
mutual information, three resolutions) with its overlap check; :mod:`.xfm` — the transform as a
file ANTs and nitransforms read (ITK text format).

Conventions: a registration is one 4x4 matrix ``A`` in RAS+ mm that maps *template* points to
*subject* (scanner) points, the direction ANTs and nitransforms use to resample a subject image
into the template grid (the file is named ``..._from-dwi_to-<space>_mode-image_xfm``). The model
itself works in *model coordinates*: template coordinates shifted so that the canonical grid is
centred on the origin (``model -> template`` is the translation :attr:`ModelTemplate.origin`).
"""
