"""Chat-bot adapters: one thin file per platform (Telegram, WeCom, WeChat) over the shared `bots.core.ChatCore`."""
