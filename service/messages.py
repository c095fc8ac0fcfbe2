"""Every user-facing message, in Chinese first and English second, in one catalogue.

Messages are looked up by a stable code so that records, sidecars, API errors and bot replies all say the
same thing. Nothing else in the code base should spell out a user-facing sentence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """A bilingual message; `str()` gives "中文 / English", the form stored in records and sidecars."""

    code: str
    zh: str
    en: str

    def format(self, **kwargs: object) -> Message:
        """Fill `{placeholders}` in both languages."""
        return Message(self.code, self.zh.format(**kwargs), self.en.format(**kwargs))

    def __str__(self) -> str:
        return f"{self.zh} / {self.en}"


_CATALOGUE: dict[str, tuple[str, str]] = {
    # Image input
    "image_empty": (
        "文件为空（0 字节）：请重新扫描或复制该文件",
        "file is empty (0 bytes): rescan or copy it again",
    ),
    "image_corrupt": (
        "无法解码图片：文件已损坏或不完整",
        "cannot decode image: file is corrupt or truncated",
    ),
    "image_not_image": (
        "不是可识别的图片格式（支持 JPEG、PNG、TIFF、WebP、BMP、GIF）",
        "not a recognised image format (JPEG, PNG, TIFF, WebP, BMP and GIF are supported)",
    ),
    "image_bomb": (
        "图片像素过多（{pixels} 像素，上限 {limit}），疑似解压炸弹，已拒绝",
        "image has too many pixels ({pixels}, limit {limit}); refused as a possible decompression bomb",
    ),
    "image_too_large": (
        "文件过大（{size_mb:.1f} MB，上限 {limit_mb} MB）",
        "file is too large ({size_mb:.1f} MB, limit {limit_mb} MB)",
    ),
    "image_unreadable": (
        "无法读取文件：{reason}",
        "cannot read file: {reason}",
    ),
    # Model and queue
    "model_oom": (
        "显存不足，已自动减小批量并稍后重试",
        "GPU out of memory; retrying later with a smaller batch",
    ),
    "model_remote_down": (
        "远程模型服务器无法连接或出错：{reason}。将自动重试",
        "remote model server unreachable or failing: {reason}. Will retry",
    ),
    "model_remote_rejected": (
        "远程模型服务器拒绝了请求：{reason}",
        "remote model server rejected the request: {reason}",
    ),
    "model_failed": ("模型生成失败：{reason}", "model generation failed: {reason}"),
    "model_load_failed": (
        "无法加载模型 {path}：{reason}。请检查 [model] path 是否为本地模型文件夹或可下载的模型名",
        "cannot load model {path}: {reason}. Check that [model] path is a local checkpoint folder or a reachable hub id",
    ),
    "retries_exhausted": (
        "多次重试后仍失败（{attempts} 次）：{reason}",
        "still failing after {attempts} attempts: {reason}",
    ),
    "ocr_no_vlm": (
        "【仅文字识别：未加载视觉语言模型，以下为图中识别出的文字】",
        "[OCR only: no vision-language model is loaded; below is the text read from the image]",
    ),
    "ocr_no_text": ("（未识别到文字）", "(no text found)"),
    "page_label": ("第 {n} 页", "page {n}"),
    "interrupted": ("服务停止时任务未完成，已重新排队", "job interrupted by shutdown and re-queued"),
    "unexpected": ("内部错误：{reason}", "internal error: {reason}"),
    # Config
    "config_invalid": ("配置文件有误：{path}", "invalid configuration: {path}"),
    "config_missing": ("找不到配置文件：{path}", "configuration file not found: {path}"),
    "config_toml": ("配置文件不是合法的 TOML：{reason}", "configuration is not valid TOML: {reason}"),
    "config_ok": ("配置有效：{path}", "configuration is valid: {path}"),
    # CLI
    "cli_no_images": ("文件夹中没有可处理的文件：{path}", "no files to process in {path}"),
    "cli_job_failed": ("处理失败：{reason}", "failed: {reason}"),
    "http_bind_failed": (
        "无法在 {host}:{port} 启动网页服务（端口被占用？）。请修改 [http] port；文件夹监视仍在运行",
        "cannot start the web server on {host}:{port} (port in use?). Change [http] port; folder watching goes on",
    ),
    # HTTP API (OpenAI-compatible errors carry these as error.message)
    "api_bad_json": ("请求内容不是合法的 JSON", "request body is not valid JSON"),
    "api_bad_request": ("请求格式有误：{reason}", "malformed request: {reason}"),
    "api_unauthorized": (
        "缺少或错误的 API 密钥（请在 Authorization: Bearer 中提供）",
        "missing or wrong API key (send it as Authorization: Bearer)",
    ),
    "api_too_large": ("请求或图片超过 {limit_mb} MB 的上限", "request or image exceeds the {limit_mb} MB limit"),
    "api_queue_full": (
        "等待中的请求太多（上限 {limit}），请 {seconds} 秒后重试",
        "too many requests waiting (limit {limit}); retry in {seconds} s",
    ),
    "api_model_unavailable": (
        "模型尚未就绪或已停止：{reason}",
        "the model is not ready or its worker has stopped: {reason}",
    ),
    "api_timeout": ("等待回答超时（{seconds} 秒）", "timed out waiting for the answer ({seconds} s)"),
    "api_image_url_disabled": (
        "不接受图片网址：请以 base64 data URL 发送图片（管理员可开启 [http] allow_image_urls）",
        "image URLs are not accepted: send images as base64 data URLs (an admin can enable [http] allow_image_urls)",
    ),
    "api_image_url_refused": (
        "拒绝访问内网或本机地址：{host}",
        "refused: {host} is a private, loopback or reserved address",
    ),
    "api_image_url_failed": ("无法下载图片：{reason}", "cannot download image: {reason}"),
    "api_not_found": ("找不到：{what}", "not found: {what}"),
    "watch_missing": (
        "监视文件夹不存在：{path}，请创建它或修改 [[watch]] path",
        "watched folder does not exist: {path}; create it or change [[watch]] path",
    ),
}


def msg(code: str, **kwargs: object) -> Message:
    """Return the catalogue message `code`, filled with `kwargs`."""
    zh, en = _CATALOGUE[code]
    message = Message(code, zh, en)
    return message.format(**kwargs) if kwargs else message


def all_codes() -> list[str]:
    """Every code in the catalogue (tests check each one formats in both languages)."""
    return sorted(_CATALOGUE)
