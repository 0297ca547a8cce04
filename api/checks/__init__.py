"""Request checks, one home for them: uploads (images, masks, names, options), body inputs,
costs, and a synthesis' limits, options and layout. Each refusal is a Problem naming the field
and the fix; nothing is stored until every check passed."""
