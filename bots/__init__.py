"""Chat-bot adapters (Telegram, WeChat, WeCom) arrive in a later issue; each will be one thin file here."""
