"""Chat-bot adapters: one thin file per platform (Telegram, WeCom, WeChat) over `bots.core.ChatCore`."""
