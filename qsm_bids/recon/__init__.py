"""Recon: pure array functions for QSM reconstruction (no file I/O)."""
