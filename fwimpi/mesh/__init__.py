"""Structured quad meshes with absorbing margins, models on GLL points, export."""
