"""The console apps (fewstep-train, -eval, -export, -compare) and what they share."""
