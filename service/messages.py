"""Every user-facing message, in Chinese first and English second, in one catalogue.

Messages are looked up by a stable code so that records, sidecars, API errors and bot replies all say the
same thing. Nothing else in the code base should spell out a user-facing sentence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service import formats, redact

_PLAIN = (str, int, float, bool, type(None))


def _scrubbed(value: object) -> object:
    # Upstream error text (an exception, a server's message) may quote a key back; numbers stay numbers.
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact.scrub(str(value))


@dataclass(frozen=True)
class Message:
    """A bilingual message; `str()` gives "中文 / English", the form stored in records and sidecars.

    `params` are the values filled in, so a record can keep the code and its parameters and render the
    message again in the reader's language (`render`).
    """

    code: str
    zh: str
    en: str
    params: Mapping[str, object] = field(default_factory=dict, compare=False)

    def format(self, **kwargs: object) -> Message:
        """Fill `{placeholders}` in both languages; secrets in the values are scrubbed (service.redact)."""
        values = {key: _scrubbed(value) for key, value in kwargs.items()}
        return Message(
            self.code, self.zh.format(**values), self.en.format(**values), {**self.params, **values}
        )

    def text(self, lang: str) -> str:
        """The message in one language ("en", else Chinese)."""
        return self.en if lang == "en" else self.zh

    def json_params(self) -> dict[str, object]:
        """The parameters as JSON values (anything else, such as an exception, as its text)."""
        return {key: value if isinstance(value, _PLAIN) else str(value) for key, value in self.params.items()}

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
    # The list of formats comes from service/formats.py, like everything else that names them.
    "image_not_image": (
        f"不是可识别的图片格式（支持 {formats.names('zh')}）",
        f"not a recognised image format ({formats.names('en')} are supported)",
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
    "pdf_encrypted": (
        "PDF 文件设有打开密码，无法读取：请提供未加密的副本",
        "the PDF is password-protected and cannot be read: provide a copy without a password",
    ),
    "pdf_broken": (
        "PDF 文件已损坏或不完整（可能未完整下载或复制），无法打开",
        "the PDF is damaged or incomplete (perhaps not fully downloaded or copied) and cannot be opened",
    ),
    "pdf_empty": ("PDF 文件没有任何页面", "the PDF has no pages"),
    "pdf_page_broken": (
        "PDF 第 {page} 页无法显示：文件已损坏",
        "page {page} of the PDF cannot be rendered: the file is damaged",
    ),
    "pages_dropped": (
        "共 {total} 页，只处理了前 {used} 页（[images] max_pages）；未处理：第 {pages} 页",
        "{total} pages; only the first {used} were used ([images] max_pages); not used: pages {pages}",
    ),
    "ocr_pdf_text_layer": (
        "第 {pages} 页的文字取自 PDF 自带的文字层，未经 OCR 识别",
        "text of page {pages} taken from the PDF's own text layer, not read by OCR",
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
    "ocr_no_text": (
        "图中没有识别到文字。",
        "No text was found in this image.",
    ),
    "ocr_no_text_page": ("（此页没有识别到文字）", "(no text found on this page)"),
    # OCR review flags (service/backends/ocr_page.py): for the history, review page and sidecar readers.
    "ocr_needs_review": (
        "部分文字识别把握不大，请人工核对",
        "Some text was read with low confidence; please check it",
    ),
    "ocr_rotated": ("扫描件旋转 {degrees}° 后识别", "Read with the scan turned {degrees}° clockwise"),
    "page_label": ("第 {n} 页", "page {n}"),
    # Storage (the database): transient faults while running, and what stops a start
    "storage_disk_full": (
        "磁盘已满，无法写入数据库（{path}）。请清理磁盘空间；空间恢复后服务会自动继续，期间放入的文件不会丢失",
        "the disk is full: cannot write the database ({path}). Free some space; the service resumes by itself once there is room, and files dropped meanwhile are not lost",
    ),
    "storage_read_only": (
        "数据库当前为只读，无法写入（{path}）。请检查磁盘是否被挂载为只读或文件权限；恢复可写后服务会自动继续",
        "the database is read-only right now ({path}). Check whether the disk was remounted read-only or the file permissions changed; the service resumes by itself once it is writable",
    ),
    "storage_busy": (
        "数据库正忙（被其他程序锁定）：{path}。稍后自动重试",
        "the database is busy (locked by another program): {path}. Retrying shortly",
    ),
    "storage_io": (
        "读写数据库时出错：{reason}（{path}）。稍后自动重试；若持续出现，请检查磁盘",
        "error writing the database: {reason} ({path}). Retrying shortly; if it persists, check the disk",
    ),
    "storage_unreachable": (
        "无法连接数据库服务器（{path}）：{reason}。稍后自动重试；请检查 PostgreSQL 是否在运行、网络是否通畅",
        "cannot reach the database server ({path}): {reason}. Retrying shortly; check that PostgreSQL is running and reachable",
    ),
    "config_database_url": (
        "不是可用的数据库地址（{reason}）。留空使用 data_dir 下的 SQLite 文件，或写 postgresql+psycopg://用户:密码@主机/库名",
        "is not a usable database URL ({reason}). Leave it empty for the SQLite file under data_dir, or use postgresql+psycopg://user:password@host/dbname",
    ),
    "backup_postgresql": (
        "tuwen backup 只备份 SQLite 文件。PostgreSQL 数据库请用 pg_dump 备份，或用 tuwen db copy --to sqlite:///文件路径 复制一份",
        "tuwen backup copies the SQLite file only. Back up a PostgreSQL database with pg_dump, or copy it with tuwen db copy --to sqlite:///PATH",
    ),
    # `tuwen db copy --to URL` (service/dbcopy.py)
    "db_copy_table": (
        "{table}：原库 {source} 行，目标库 {target} 行",
        "{table}: {source} rows in the source, {target} in the target",
    ),
    "db_copy_done": (
        "复制完成，共 {rows} 行，各表行数一致",
        "copy complete: {rows} rows, every table's count matches",
    ),
    "db_copy_mismatch": (
        "复制后行数不一致（见上）。请勿使用目标库；确认复制期间 tuwen serve 已停止，清空目标库后重试",
        "the row counts differ after the copy (see above). Do not use the target; make sure tuwen serve was stopped during the copy, empty the target and try again",
    ),
    "db_copy_not_empty": (
        "目标库 {target} 不是空的（{tables} 中已有数据），不会复制进去，以免两份历史混在一起。请指定一个新建的空数据库",
        "the target {target} is not empty ({tables} already hold rows); nothing was copied, so two histories are not mixed. Name a new, empty database",
    ),
    "db_copy_same": (
        "目标库 {target} 就是当前配置的数据库，无需复制",
        "the target {target} is the database configured now; there is nothing to copy",
    ),
    "storage_recovered": ("数据库已恢复可写", "the database is writable again"),
    "data_dir_unusable": (
        "无法使用数据文件夹 {path}（{reason}）。请创建它并让运行 tuwen 的用户可以写入（systemd 中为 ReadWritePaths，容器中为 /data 卷的属主），或修改 [storage] data_dir",
        "cannot use the data folder {path} ({reason}). Create it and make it writable by the user tuwen runs as (ReadWritePaths under systemd, the owner of the /data volume in a container), or change [storage] data_dir",
    ),
    "db_corrupt": (
        "数据库文件已损坏，无法打开：{path}（{reason}）。请停止服务，用最近的备份替换该文件（或把它移走，让服务新建一个空数据库），然后再启动。原文件请保留，以便恢复",
        "the database file is damaged and cannot be opened: {path} ({reason}). Stop the service, replace the file with your latest backup (or move it aside to start with an empty database), then start again. Keep the damaged file for recovery",
    ),
    "db_read_only": (
        "无法写入数据库：{path}（{reason}）。请检查该文件及所在文件夹对运行 tuwen 的用户是否可写（systemd 中为 ReadWritePaths），以及磁盘是否被挂载为只读",
        "cannot write the database: {path} ({reason}). Check that the file and its folder are writable by the user tuwen runs as (ReadWritePaths under systemd) and that the disk is not mounted read-only",
    ),
    "db_disk_full": (
        "磁盘已满，无法启动数据库：{path}。请先清理磁盘空间再启动",
        "the disk is full: cannot start the database {path}. Free some space, then start again",
    ),
    "db_cannot_open": (
        "无法打开数据库：{path}（{reason}）。请检查 [storage] data_dir 是否存在且可写",
        "cannot open the database: {path} ({reason}). Check that [storage] data_dir exists and is writable",
    ),
    "job_stuck": (
        "任务 {jobs} 已超过 {seconds} 秒仍未完成，模型进程已重启，任务将重试一次",
        "job {jobs} has run longer than {seconds} s; the model worker was restarted and the job is retried once",
    ),
    "job_timeout": (
        "处理超时：两次都超过了 {seconds} 秒（[model] job_timeout_seconds），已放弃。请检查模型服务器或换一张较小的图片",
        "timed out twice after {seconds} s ([model] job_timeout_seconds); given up. Check the model server or try a smaller image",
    ),
    "sidecar_name_shortened": (
        "文件名太长，无法在其后加上 .json/.xmp：附属文件改用缩短的名字 {name}.json / {name}.xmp",
        "the file name is too long to add .json/.xmp: its sidecars use the shortened name {name}.json / {name}.xmp",
    ),
    "interrupted": ("服务停止时任务未完成，已重新排队", "job interrupted by shutdown and re-queued"),
    "unexpected": ("内部错误：{reason}", "internal error: {reason}"),
    # Chat bots (bots/core.py, shared by every platform)
    "bot_help": (
        "你好！我是图问。发一张照片（可以在说明里写上问题），我来回答；之后直接发文字，就能继续追问这张照片。"
        "一次发几张照片，会一起回答。发送 /new 或「新对话」重新开始。",
        "Hello! I am tuwen. Send a photo (put your question in its caption) and I will answer; then send text "
        "to ask follow-up questions about it. Several photos sent together are answered together. Send /new "
        "to start over.",
    ),
    "bot_need_photo": (
        "请先发一张照片，再提问。",
        "Please send a photo first, then ask about it.",
    ),
    "bot_new": ("好的，已开始新的对话。请发一张照片。", "OK, a new conversation. Send a photo."),
    "bot_not_allowed": (
        "抱歉，你没有使用权限（用户 ID：{user_id}，会话 ID：{chat_id}）。请把这两个 ID 告诉管理员。",
        "Sorry, you may not use this bot (user id {user_id}, chat id {chat_id}). Give these ids to the admin.",
    ),
    "bot_rate_limited": (
        "提问太频繁了（每分钟最多 {limit} 次），请 {seconds} 秒后再试。",
        "Too many questions (at most {limit} a minute); try again in {seconds} s.",
    ),
    "bot_max_turns": (
        "这张照片已经追问了 {n} 次，请发一张新照片，或发送 /new 重新开始。",
        "You have asked {n} follow-up questions about this photo; send a new photo or /new to start over.",
    ),
    "bot_busy": (
        "现在排队的问题太多，请过一会儿再试。",
        "Too many questions are waiting right now; please try again in a little while.",
    ),
    "bot_model_down": (
        "模型暂时不可用，请稍后再试。",
        "The model is not available right now; please try again later.",
    ),
    "bot_storage_down": (
        "服务器暂时无法保存照片（磁盘已满或只读），请稍后再试。",
        "The server cannot store photos right now (its disk is full or read-only); please try again later.",
    ),
    "bot_timeout": (
        "等了 {seconds} 秒还没有回答，请稍后再问一次。",
        "No answer after {seconds} s; please ask again later.",
    ),
    "bot_failed": ("抱歉，没能回答：{reason}", "Sorry, I could not answer: {reason}"),
    "bot_empty_answer": ("（模型没有给出回答）", "(the model gave no answer)"),
    "bot_file_too_large": (
        "文件太大（{size_mb} MB），最多只能接收 {limit_mb} MB。请以照片方式发送，或先压缩。",
        "The file is too large ({size_mb} MB); the limit is {limit_mb} MB. Send it as a photo or shrink it.",
    ),
    "bot_not_image": (
        f"这个文件不是图片，请发送照片，或以下格式的文件：{formats.names('zh')}。",
        f"This file is not an image; please send a photo, or a file in one of these formats: {formats.names('en')}.",
    ),
    "bot_download_failed": (
        "无法下载这张图片，请重新发送。",
        "Could not download the image; please send it again.",
    ),
    "bot_auth_failed": (
        "{platform} 机器人的凭据被拒绝（{reason}），已停用该机器人，服务其余部分照常运行。请检查配置",
        "{platform} bot credentials were rejected ({reason}); the bot is disabled, the rest of the service "
        "runs on. Check the configuration",
    ),
    "bot_unavailable": (
        "无法连接 {platform}：{reason}。将自动重试",
        "cannot reach {platform}: {reason}. Will keep retrying",
    ),
    "bot_recovered": ("已重新连接 {platform}", "{platform} reachable again"),
    "bot_disabled": (
        "{platform} 机器人已停用：{reason}。服务其余部分照常运行",
        "{platform} bot disabled: {reason}. The rest of the service runs on",
    ),
    # WeCom (bots/wecom.py)
    "wecom_not_configured": (
        "企业微信配置不完整：{reason}。请在 [wecom] 中填写 corp_id、agent_id、secret、token 和 encoding_aes_key（43 个字符）",
        "WeCom is not fully configured: {reason}. Set corp_id, agent_id, secret, token and encoding_aes_key (43 characters) in [wecom]",
    ),
    "wecom_callback_refused": ("已拒绝企业微信回调：{reason}", "WeCom callback refused: {reason}"),
    # WeChat (bots/wechat.py)
    "wechat_not_installed": (
        "微信机器人无法启动：未能加载 python-wechaty（{reason}）。请安装可选组件：pip install 'tuwen[wechat]'（在源码目录中为 pip install '.[wechat]'），并准备一个 wechaty puppet-service 网关。服务其余部分照常运行",
        "WeChat bot not started: python-wechaty could not be loaded ({reason}). Install the optional extra: pip install 'tuwen[wechat]' (from a checkout: pip install '.[wechat]') and run a wechaty puppet-service gateway. The rest of the service runs on",
    ),
    "wechat_not_configured": (
        "微信机器人未启动：{reason}。请在 [wechat] 中填写 wechaty 网关的 endpoint（host:port）和/或 token",
        "WeChat bot not started: {reason}. Set the wechaty gateway's endpoint (host:port) and/or token in [wechat]",
    ),
    # Config
    "config_invalid": ("配置文件有误：{path}", "invalid configuration: {path}"),
    "config_missing": ("找不到配置文件：{path}", "configuration file not found: {path}"),
    "config_toml": ("配置文件不是合法的 TOML：{reason}", "configuration is not valid TOML: {reason}"),
    "check_data_dir": (
        "数据文件夹 {path} 无法写入（或无法创建）。请创建它并让运行 tuwen 的用户可写，或修改 [storage] data_dir",
        "the data folder {path} cannot be written (or created). Create it, make it writable by the user tuwen runs as, or change [storage] data_dir",
    ),
    "check_watch_missing": (
        "监视文件夹 {name} 不存在：{path}。请创建它（或挂载共享盘），否则 /health 会一直报告异常",
        "watched folder {name} does not exist: {path}. Create it (or mount the share); until then /health reports it as down",
    ),
    "check_watch_unreadable": (
        "监视文件夹 {name} 无法读取：{path}。请让运行 tuwen 的用户可以读取它",
        "watched folder {name} cannot be read: {path}. Let the user tuwen runs as read it",
    ),
    "check_watch_unwritable": (
        "监视文件夹 {name} 的附属文件无法写入（{where}）：{path}。请让运行 tuwen 的用户可写，或设置 [[watch]] output_dir",
        "sidecars of watched folder {name} cannot be written ({where}): {path}. Make it writable by the user tuwen runs as, or set [[watch]] output_dir",
    ),
    "gpu_extra_missing": (
        "[model] backend = \"transformers\" 需要 GPU 组件：pip install 'tuwen[gpu]'（源码目录中：.venv/bin/pip install -e '.[gpu]'），并先按 README 安装与显卡驱动匹配的 PyTorch",
        "[model] backend = \"transformers\" needs the GPU extra: pip install 'tuwen[gpu]' (from a checkout: .venv/bin/pip install -e '.[gpu]'), after installing the PyTorch build that matches your driver (README)",
    ),
    "check_model_missing": (
        "模型文件夹不存在或不完整（缺少 config.json）：{path}。请用 hf download 下载模型到该文件夹，或修改 [model] path",
        "the model folder is missing or incomplete (no config.json): {path}. Download the model there with hf download, or change [model] path",
    ),
    "check_model_download": (
        "提示：[model] path = {model} 是模型名，首次启动时会从网络下载约 21 GB；无法联网的机器请先下载到本地文件夹（见 README）",
        "note: [model] path = {model} is a hub id: about 21 GB are downloaded at first start; machines without internet need a local folder (see README)",
    ),
    "check_problems": ("配置文件本身有效，但在这台机器上有问题：", "the file is valid, but on this machine:"),
    "config_ok": ("配置有效：{path}", "configuration is valid: {path}"),
    # CLI
    "cli_no_images": ("文件夹中没有可处理的文件：{path}", "no files to process in {path}"),
    "cli_job_failed": ("处理失败：{reason}", "failed: {reason}"),
    "cli_model_failed": (
        "模型无法加载，任务未能完成",
        "the model could not be loaded; the jobs were not answered",
    ),
    "cli_service_gone": (
        "正在运行的 tuwen serve（节点 {node}）已停止，任务仍在队列中，下次启动服务时会被回答",
        "the running tuwen serve (node {node}) stopped; the jobs stay queued and are answered when it starts again",
    ),
    "cli_ask_interrupted": (
        "已中断。该问题留在队列中，下次运行 tuwen serve 时会被回答；用 tuwen jobs 查看",
        "interrupted. The question stays queued and is answered the next time tuwen serve runs; see it with tuwen jobs",
    ),
    "cli_ask_interrupted_service": (
        "已中断。正在运行的服务仍会回答这个问题；用 tuwen jobs 查看结果",
        "interrupted. The running service still answers the question; see the result with tuwen jobs",
    ),
    "cli_batch_interrupted": (
        "已中断：{total} 个文件中已完成 {done} 个。再次运行同一命令即可继续，已完成的不会重复处理",
        "interrupted: {done} of {total} files done. Run the same command again to go on; nothing done is repeated",
    ),
    "cli_requeued": (
        "已重新排队 {count} 个失败任务，正在运行的 tuwen serve 会回答它们",
        "re-queued {count} failed job(s); a running tuwen serve answers them",
    ),
    "cli_link_kiosk": ("展品问答平板 kiosk", "kiosk (museum tablet)"),
    "cli_link_feed": ("大厅展示屏 feed", "feed (hall screen)"),
    "cli_links_no_key": (
        "（未设置 [http] api_key，页面无需令牌）",
        "(no [http] api_key set: the pages need no token)",
    ),
    "cli_interrupted": ("已中断，未做任何更改", "interrupted; nothing was changed"),
    "cli_batch_summary": (
        "完成 {done}，失败 {failed}，共 {total}",
        "done {done}, failed {failed}, of {total}",
    ),
    # tuwen backup / tuwen health
    "backup_written": (
        "已备份到 {path}（已通过完整性检查）",
        "backed up to {path} (integrity check passed)",
    ),
    "backup_no_database": (
        "没有找到数据库 {path}：请检查 [storage] data_dir（服务第一次启动时才会创建数据库）",
        "no database at {path}: check [storage] data_dir (the database is created when the service first starts)",
    ),
    "backup_dest_unwritable": (
        "无法写入备份 {path}：{reason}。请确认该文件夹存在且可写，并且磁盘有空间",
        "cannot write the backup {path}: {reason}. Check that the folder exists and is writable, and that the disk has room",
    ),
    "backup_same_file": (
        "备份目标就是数据库本身（{path}）：请另选一个文件或文件夹",
        "the backup destination is the database itself ({path}): choose another file or folder",
    ),
    "backup_failed": (
        "备份失败：{reason}。没有留下不完整的副本，请稍后重试",
        "backup failed: {reason}. No partial copy was left; try again later",
    ),
    "backup_integrity_failed": (
        "备份副本未通过 SQLite 完整性检查（{reason}），已删除。数据库本身可能已损坏：请保留以前的备份",
        "the copy failed SQLite's integrity check ({reason}) and was removed. The database itself may be damaged: keep your earlier backups",
    ),
    "health_ok": ("服务正常：{url}", "healthy: {url}"),
    "health_unhealthy": ("服务异常（HTTP {status}）：{reason}", "unhealthy (HTTP {status}): {reason}"),
    "health_unreachable": (
        "无法连接 {url}：{reason}（服务是否在运行，端口是否一致？）",
        "cannot reach {url}: {reason} (is the service running, on this port?)",
    ),
    "health_http_disabled": (
        "[http] enabled = false：没有可检查的 /health",
        "[http] enabled = false: there is no /health to check",
    ),
    "http_bind_failed": (
        "无法在 {host}:{port} 启动网页服务：{reason}。该端口可能已被其他程序（或另一个 tuwen）占用：请停止它，或修改 [http] port",
        "cannot start the web server on {host}:{port}: {reason}. Another program (or another tuwen) may be using the port: stop it, or change [http] port",
    ),
    # HTTP API (OpenAI-compatible errors carry these as error.message)
    "api_bad_json": ("请求内容不是合法的 JSON", "request body is not valid JSON"),
    "api_bad_request": ("请求格式有误：{reason}", "malformed request: {reason}"),
    "api_unauthorized": (
        "缺少或错误的 API 密钥（请在 Authorization: Bearer 中提供）",
        "missing or wrong API key (send it as Authorization: Bearer)",
    ),
    "api_too_large": (
        "请求或图片超过 {limit_mb} MB 的上限",
        "request or image exceeds the {limit_mb} MB limit",
    ),
    "api_queue_full": (
        "等待中的请求太多（上限 {limit}），请 {seconds} 秒后重试",
        "too many requests waiting (limit {limit}); retry in {seconds} s",
    ),
    "api_model_unavailable": (
        "模型尚未就绪或已停止：{reason}",
        "the model is not ready or its worker has stopped: {reason}",
    ),
    "api_timeout": ("等待回答超时（{seconds} 秒）", "timed out waiting for the answer ({seconds} s)"),
    "api_unsupported": (
        "不支持请求中的 {param}：本服务无法提供 {what}。请去掉该字段后重试",
        "{param} is not supported: this server cannot provide {what}. Remove the field and try again",
    ),
    "api_too_many_images": (
        "一次请求中的图片太多（{count} 张，上限 {limit} 张，[http] max_images_per_request）",
        "too many images in one request ({count}, limit {limit}, [http] max_images_per_request)",
    ),
    "api_too_many_pixels": (
        "请求中图片的总像素太多（{pixels}，上限 {limit}，[http] max_pixels_per_request）",
        "the images of this request have too many pixels in all ({pixels}, limit {limit}, [http] max_pixels_per_request)",
    ),
    "api_body_timeout": (
        "请求内容在 {seconds} 秒内没有传完，已断开",
        "the request body did not arrive within {seconds} s",
    ),
    "api_method_not_allowed": (
        "{path} 不支持 {method} 请求",
        "{method} is not allowed on {path}",
    ),
    "api_model_not_found": (
        "没有名为 {model} 的模型（本服务提供：{served}）",
        "the model {model} does not exist here (this server serves: {served})",
    ),
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
    # Sessions and cross-site request checks (service/http/auth.py): a request that only the login cookie
    # authenticates must come from tuwen's own pages and be JSON
    "api_csrf_refused": (
        "拒绝跨站请求：请从图问自己的页面发送，或附上 X-CSRF-Token 请求头",
        "cross-site request refused: send it from tuwen's own pages or with an X-CSRF-Token header",
    ),
    "api_json_required": (
        "此请求须以 Content-Type: application/json 发送",
        "this request must be sent with Content-Type: application/json",
    ),
    # Accounts, roles, operations and the audit log (service/http/auth.py, users_api.py, ops_api.py)
    "api_role_refused": (
        "需要 {role} 角色才能执行此操作（当前账号为 {have}）",
        "this needs the {role} role (this account is a {have})",
    ),
    "account_bad_name": (
        "用户名无效：{name}（1–64 个字母、数字或 . _ - @，不能含空格或冒号）",
        "invalid user name: {name} (1–64 letters, digits or . _ - @, no spaces or colons)",
    ),
    "account_bad_role": (
        "角色无效：{role}（可用：viewer 查看、reviewer 审核、admin 管理）",
        "invalid role: {role} (allowed: viewer, reviewer, admin)",
    ),
    "account_exists": ("用户 {name} 已存在", "the user {name} exists already"),
    "account_unknown": ("没有名为 {name} 的用户", "there is no user called {name}"),
    "account_last_admin": (
        "不能移除或降级最后一个管理员账号 {name}（可用命令行 tuwen users 处理）",
        "the last admin account {name} cannot be removed or demoted here (use tuwen users on the server)",
    ),
    "password_short": ("密码太短：至少需要 {min} 个字符", "password too short: at least {min} characters"),
    "password_long": ("密码太长：最多 {max} 个字符", "password too long: at most {max} characters"),
    "cli_password_prompt": ("{name} 的新密码：", "New password for {name}: "),
    "cli_password_again": ("再输入一次：", "Again: "),
    "cli_password_mismatch": (
        "两次输入的密码不一致，未做任何更改",
        "the passwords differ; nothing was changed",
    ),
    "cli_password_empty_stdin": ("标准输入中没有密码", "no password on standard input"),
    "cli_user_added": ("已添加用户 {name}（{role}）", "added the user {name} ({role})"),
    "cli_user_password_set": (
        "已更改 {name} 的密码；结束了 {sessions} 个登录会话",
        "changed the password of {name}; {sessions} login session(s) ended",
    ),
    "cli_user_role_set": (
        "{name} 现在是 {role}；结束了 {sessions} 个登录会话",
        "{name} is now a {role}; {sessions} login session(s) ended",
    ),
    "cli_user_removed": (
        "已删除用户 {name}；结束了 {sessions} 个登录会话",
        "removed the user {name}; {sessions} login session(s) ended",
    ),
    "cli_users_none": ("还没有用户账号", "no user accounts yet"),
    "cli_users_open": (
        "注意：既没有用户账号也没有 [http] api_key，网页界面对能访问本机的任何人开放",
        "note: with no user accounts and no [http] api_key the web UI is open to anyone who can reach it",
    ),
    "job_not_finished": (
        "任务 {job} 仍为 {status}：完成后才能重新运行",
        "job {job} is still {status}: it can be re-run once it has finished",
    ),
    "job_images_gone": (
        "任务 {job} 的图片已不在：{path}",
        "the image of job {job} is gone: {path}",
    ),
    "job_newer_answer": (
        "文件 {file} 之后已由任务 {newer} 重新解读：请重新运行该任务",
        "the file {file} has been answered again since, by job {newer}: re-run that one",
    ),
    "rerun_queued": (
        "已作为任务 {job} 重新排队；任务 {previous} 及其审核原样保留",
        "queued again as job {job}; job {previous} and its review stay as they are",
    ),
    "rerun_correction_kept": (
        "任务 {previous} 上人工写的更正随新任务保留（review_status 为 corrected），模型的新回答放在旁边：请重新审核",
        "the correction a person wrote on job {previous} is kept on the new job (review_status corrected), the model's new answer beside it: review it again",
    ),
    "note_rerun_of": ("重新运行自任务 {job}", "re-run of job {job}"),
    "note_correction_kept": (
        "沿用任务 {job} 中人工写的更正",
        "the correction a person wrote on job {job} is kept",
    ),
    "watch_unknown": ("没有名为 {name} 的监视文件夹", "there is no watch called {name}"),
    "watch_rerun_busy": (
        "监视文件夹 {name} 上一次的重新运行仍在排队，请稍后再试",
        "the previous re-run of the watch {name} is still being queued; try again shortly",
    ),
    "watch_rerun_queued": (
        "监视文件夹 {name}：{count} 个文件重新排队（{which}）；人工写的更正随新任务保留",
        "watch {name}: {count} file(s) queued again ({which}); corrections people wrote stay with the new jobs",
    ),
    "backlog_paused": (
        "已暂停积压任务（监视文件夹）：正在运行的会完成，新的不再开始；交互式提问照常回答",
        "the backlog (watched folders) is paused: jobs running now finish, no new ones start; questions people ask are still answered",
    ),
    "backlog_resumed": ("已恢复积压任务", "the backlog is running again"),
    # History and review API
    "history_bad_date": (
        "日期格式有误：{name}={value}（应为 YYYY-MM-DD）",
        "invalid date: {name}={value} (expected YYYY-MM-DD)",
    ),
    "history_bad_param": (
        "参数 {name} 的值无效：{value}（可用：{allowed}）",
        "invalid value for {name}: {value} (allowed: {allowed})",
    ),
    "review_correction_missing": (
        "标记为“已更正”时必须填写更正内容",
        "a correction text is required when the verdict is 'corrected'",
    ),
    "review_correction_too_long": (
        "更正内容过长（{length} 字，上限 {limit} 字）",
        "correction is too long ({length} characters, limit {limit})",
    ),
    "review_not_done": (
        "只能审核已完成的任务（此任务状态：{status}）",
        "only done jobs can be reviewed (this one is {status})",
    ),
    "watch_missing": (
        "监视文件夹不存在：{path}，请创建它或修改 [[watch]] path",
        "watched folder does not exist: {path}; create it or change [[watch]] path",
    ),
    # Scheduled reports: the scheduler and delivery (operators read these in the log)
    "report_run_failed": (
        "报告 {name} 生成失败：{reason}（下次按计划再试）",
        "report {name} could not be written: {reason} (it runs again at its next scheduled time)",
    ),
    "report_missed": (
        "报告 {name} 错过了 {when} 的运行，已超过补跑期限（grace_minutes），不再补跑",
        "report {name} missed its run at {when}, beyond grace_minutes: not run late",
    ),
    "report_delivery_failed": (
        "报告发送失败（{target}）：{reason}；报告文件已保存",
        "report delivery to {target} failed: {reason}; the report files are saved",
    ),
    "report_no_notifier": (
        "{platform} 未启用或无法主动发送消息，跳过",
        "{platform} is not enabled or cannot send unprompted messages; skipped",
    ),
    # Reports (service/reports): file contents, the chat summary and `tuwen report`
    "report_title": ("图问工作报告：{name}", "tuwen report: {name}"),
    "report_kind_day": ("日报", "daily report"),
    "report_kind_week": ("周报", "weekly report"),
    "report_kind_month": ("月报", "monthly report"),
    "report_period": (
        "统计期间：{period}（{timezone} 当地时间）",
        "period: {period} ({timezone} local time)",
    ),
    "report_generated": ("生成时间：{time}", "generated: {time}"),
    "report_totals": (
        "共 {total} 项：完成 {done} 项，失败 {failed} 项，未完成 {pending} 项",
        "{total} jobs: {done} done, {failed} failed, {pending} not finished yet",
    ),
    "report_by_source": ("按来源", "By source"),
    "report_by_watch": ("按监视文件夹", "By watched folder"),
    "report_failures": ("失败原因", "Failure reasons"),
    "report_no_failures": ("本期没有失败的任务", "no failed jobs in this period"),
    "report_turnaround": (
        "周转时间（从提交到完成，含排队）：中位数 {p50}，95% 分位 {p95}（{n} 项）",
        "turnaround (submitted to finished, queueing included): median {p50}, 95th percentile {p95} ({n} jobs)",
    ),
    "report_processing": (
        "处理时间（模型本身耗时）：中位数 {p50}，95% 分位 {p95}",
        "processing (the model's own time): median {p50}, 95th percentile {p95}",
    ),
    "report_throughput": (
        "吞吐量：平均每小时 {per_hour} 项，每天 {per_day} 项（已完成和失败的任务）",
        "throughput: {per_hour} jobs an hour, {per_day} a day on average (done and failed jobs)",
    ),
    "report_busiest_hours": ("最忙时段", "Busiest hours"),
    "report_questions": (
        "常见问题（展台、网页、接口、聊天机器人）",
        "Most frequent questions (kiosk, web, API, chat bots)",
    ),
    "report_no_questions": ("本期没有访客提问", "no visitor questions in this period"),
    "report_review": ("人工审核", "Staff review"),
    "report_reviews_recorded": (
        "本期审核 {reviewed} 项：确认正确 {correct} 项，更正 {corrected} 项",
        "{reviewed} answers reviewed in this period: {correct} confirmed, {corrected} corrected",
    ),
    "report_accuracy": (
        "抽样准确率 {accuracy}（95% 置信区间 {low} ~ {high}，Wilson 方法）",
        "sampled accuracy {accuracy} (95% confidence interval {low} to {high}, Wilson)",
    ),
    "report_answers_reviewed": (
        "本期的 {done} 个回答中，目前已审核 {reviewed} 个（{share}）",
        "{reviewed} of this period's {done} answers have been reviewed so far ({share})",
    ),
    "report_no_reviews": ("本期没有审核记录", "no reviews recorded in this period"),
    "report_corrections": ("本期更正", "Corrections made in this period"),
    "report_items": ("新增条目", "New items"),
    "report_items_more": (
        "另有 {more} 项未列出，完整列表见 CSV 文件",
        "{more} more not listed here; the CSV file lists every job",
    ),
    "report_no_items": ("本期没有新的回答", "no new answers in this period"),
    "report_open_history": ("在网页中打开历史记录", "open the history in the web UI"),
    "report_chart_title": ("每日任务数（按来源）与失败比例", "Jobs per day by source, and the failed share"),
    "report_chart_alt": (
        "每日任务数柱状图（按来源），折线为每日失败比例",
        "bar chart of jobs per day by source, with a line for each day's failed share",
    ),
    "report_chart_x": ("日期", "date"),
    "report_chart_y": ("任务数", "jobs"),
    "report_chart_failed": ("失败比例（%）", "failed share (%)"),
    "report_col_source": ("来源", "Source"),
    "report_col_watch": ("文件夹", "Folder"),
    "report_col_total": ("合计", "Total"),
    "report_col_done": ("完成", "Done"),
    "report_col_failed": ("失败", "Failed"),
    "report_col_count": ("次数", "Count"),
    "report_col_code": ("代码", "Code"),
    "report_col_reason": ("原因", "Reason"),
    "report_col_hour": ("时段", "Hour"),
    "report_col_question": ("问题", "Question"),
    "report_col_who": ("文件或发送者", "File or sender"),
    "report_col_link": ("链接", "Link"),
    "report_col_correction": ("更正为", "Corrected to"),
    "report_notes": (
        "说明：任务按提交时间计入统计期间；时间均为 {timezone} 当地时间；分位数按最近秩法计算；CSV 文件列出本期每一个任务。",
        "Notes: jobs count in the period they were submitted in; times are {timezone} local time; percentiles are nearest-rank; the CSV file lists every job of the period.",
    ),
    "report_summary_sources": ("来源：{sources}", "sources: {sources}"),
    "report_summary_failures": ("失败原因：{reasons}", "failure reasons: {reasons}"),
    "report_summary_latency": (
        "处理耗时中位数 {p50}，95% 分位 {p95}；最忙时段 {hour}",
        "median processing time {p50}, 95th percentile {p95}; busiest hour {hour}",
    ),
    "report_bad_range": (
        "起始日期 {since} 晚于截止日期 {until}",
        "the start date {since} is after the end date {until}",
    ),
    "report_unknown_name": (
        "没有名为 {name} 的报告（已配置：{names}）",
        "no report named {name} (configured: {names})",
    ),
    "report_written": ("报告 {name} 已生成：", "report {name} written:"),
    # Web pages (ui_*): sent to the browser by GET /api/i18n; {placeholders} are filled there
    "ui_lang_name": ("中文", "English"),
    "ui_app_title": ("图问", "tuwen"),
    "ui_app_subtitle": ("看图回答问题", "questions about images"),
    "ui_tab_ask": ("提问", "Ask"),
    "ui_tab_history": ("历史记录", "History"),
    "ui_tab_review": ("审核", "Review"),
    "ui_logout": ("退出登录", "Log out"),
    "ui_loading": ("加载中…", "Loading…"),
    "ui_error": ("出错了：{reason}", "something went wrong: {reason}"),
    "ui_error_network": ("网络连接失败，请稍后再试", "network error; please try again"),
    "ui_error_interrupted": ("回答中断了，请再问一次", "the answer was interrupted; please ask again"),
    "ui_error_image": ("无法读取这张图片，请换一张", "cannot read this image; please choose another"),
    "ui_error_format": (
        f"不支持这种文件，请选择以下格式：{formats.names('zh')}",
        f"this kind of file is not supported ({formats.names('en')} are)",
    ),
    "ui_ask_drop": (
        "把图片拖到这里、粘贴（Ctrl+V），或点击选择",
        "Drop an image here, paste it (Ctrl+V) or click to choose",
    ),
    "ui_ask_question_placeholder": (
        "输入你的问题，例如：这张照片是在哪里拍的？",
        "Type your question, e.g. where was this photo taken?",
    ),
    "ui_ask_send": ("提问", "Ask"),
    "ui_ask_stop": ("停止", "Stop"),
    "ui_ask_new": ("新对话", "New conversation"),
    "ui_ask_need_image": ("请先选择一张图片", "Choose an image first"),
    "ui_ask_need_question": ("请输入问题", "Type a question"),
    "ui_ask_you": ("我", "You"),
    "ui_ask_bot": ("图问", "tuwen"),
    "ui_ask_empty": (
        "选好图片后提问，回答会逐字显示；可以接着追问同一张图。",
        "Choose an image and ask; the answer appears as it is written, and you can ask follow-ups.",
    ),
    "ui_history_search_placeholder": (
        "搜索问题、回答、识别文字或文件名",
        "Search questions, answers, OCR text or file names",
    ),
    "ui_history_search": ("搜索", "Search"),
    "ui_history_from": ("起始日期", "From"),
    "ui_history_to": ("截止日期", "To"),
    "ui_history_all_sources": ("全部来源", "All sources"),
    "ui_history_export": ("导出 CSV", "Export CSV"),
    "ui_history_empty": ("没有找到记录", "No records found"),
    "ui_history_total": ("共 {total} 条", "{total} in all"),
    "ui_history_page": ("第 {page} 页，共 {pages} 页", "page {page} of {pages}"),
    "ui_history_prev": ("上一页", "Previous"),
    "ui_history_next": ("下一页", "Next"),
    "ui_history_review_this": ("审核此条", "Review this"),
    "ui_col_image": ("图片", "Image"),
    "ui_col_time": ("时间", "Time"),
    "ui_col_source": ("来源", "Source"),
    "ui_col_question": ("问题", "Question"),
    "ui_col_answer": ("回答", "Answer"),
    "ui_col_ocr": ("识别文字", "OCR text"),
    "ui_col_review": ("审核", "Review"),
    "ui_source_watch": ("文件夹", "Folder"),
    "ui_source_web": ("网页", "Web"),
    "ui_source_kiosk": ("展台", "Kiosk"),
    "ui_source_api": ("接口", "API"),
    "ui_source_cli": ("命令行", "Command line"),
    "ui_source_batch": ("批量处理", "Batch"),
    "ui_source_telegram": ("电报（Telegram）", "Telegram"),
    "ui_source_wechat": ("微信", "WeChat"),
    "ui_source_wecom": ("企业微信", "WeCom"),
    "ui_status_queued": ("排队中", "queued"),
    "ui_status_running": ("处理中", "running"),
    "ui_status_failed": ("失败", "failed"),
    "ui_badge_ocr": ("仅文字识别", "text only (OCR)"),
    "ui_badge_needs_review": ("需核对", "check this"),
    "ui_badge_needs_review_hint": (
        "部分文字识别把握不大（置信度低于 [ocr] review_confidence），请对照原件核对",
        "some text was read with low confidence (under [ocr] review_confidence); compare it with the original",
    ),
    "ui_badge_ocr_hint": (
        "没有视觉语言模型在回答：这是从图中识别出的文字，问题本身没有被回答",
        "no vision-language model answered: this is the text read from the image; the question itself was not answered",
    ),
    "ui_review_unreviewed": ("未审核", "not reviewed"),
    "ui_review_correct": ("正确", "correct"),
    "ui_review_corrected": ("已更正", "corrected"),
    "ui_review_sample": ("随机抽取待审核", "Sample for review"),
    "ui_review_hint": (
        "点击“随机抽取待审核”，随机抽取尚未审核的回答；也可以在历史记录中选择某一条审核。",
        "Press “Sample for review” to draw unreviewed answers at random, or pick one in History.",
    ),
    "ui_review_none": ("没有待审核的回答", "Nothing left to review"),
    "ui_review_mark_correct": ("回答正确", "Answer is correct"),
    "ui_review_correction_placeholder": ("写下正确的回答", "Write the correct answer"),
    "ui_review_save_correction": ("保存更正", "Save correction"),
    "ui_review_undo": ("撤销审核", "Undo review"),
    "ui_review_saved": ("已保存", "Saved"),
    "ui_review_correction": ("更正：{text}", "correction: {text}"),
    "ui_stats_title": ("审核统计", "Review statistics"),
    "ui_stats_done": ("已回答 {done} 条", "{done} answered"),
    "ui_stats_reviewed": ("已审核 {reviewed} 条（{share}）", "{reviewed} reviewed ({share})"),
    "ui_stats_accuracy": (
        "准确率 {accuracy}（95% 置信区间 {low} ~ {high}）",
        "accuracy {accuracy} (95% confidence interval {low} to {high})",
    ),
    "ui_stats_no_reviews": ("尚无审核数据", "no reviews yet"),
    "ui_login_title": ("请登录", "Please log in"),
    "ui_login_key": ("访问密钥", "Access key"),
    "ui_login_username": ("用户名", "User name"),
    "ui_login_password": ("密码", "Password"),
    "ui_login_key_hint": (
        "使用访问密钥登录时，用户名留空，在密码栏填写密钥",
        "To log in with the access key, leave the name empty and type the key as the password",
    ),
    "ui_watches_title": ("监视文件夹", "Watched folders"),
    "ui_audit_title": ("审计日志", "Audit log"),
    "ui_audit_export": ("导出审计日志 CSV", "Export the audit log (CSV)"),
    "ui_audit_at": ("时间", "Time"),
    "ui_audit_actor": ("操作人", "By"),
    "ui_audit_action": ("操作", "Action"),
    "ui_audit_target": ("对象", "Target"),
    "ui_audit_empty": ("还没有记录", "Nothing recorded yet"),
    "ui_watch_name": ("名称", "Name"),
    "ui_watch_queued": ("排队", "Queued"),
    "ui_watch_running": ("处理中", "Running"),
    "ui_watch_done": ("完成", "Done"),
    "ui_watch_failed": ("失败", "Failed"),
    "ui_watch_rate": ("每分钟完成", "Done per minute"),
    "ui_watch_left": ("预计剩余", "Time left"),
    "ui_watch_left_unknown": ("未知", "unknown"),
    "ui_watch_left_seconds": ("约 {n} 秒", "about {n} s"),
    "ui_watch_left_minutes": ("约 {n} 分钟", "about {n} min"),
    "ui_watch_left_hours": ("约 {n} 小时", "about {n} h"),
    "ui_backlog_running": ("积压任务正在处理", "The backlog is running"),
    "ui_backlog_paused_by": (
        "积压任务已由 {by} 暂停；交互式提问照常回答",
        "The backlog was paused by {by}; questions people ask are still answered",
    ),
    "ui_backlog_paused_short": ("已暂停", "paused"),
    "ui_backlog_pause": ("暂停积压任务", "Pause the backlog"),
    "ui_backlog_resume": ("恢复积压任务", "Resume the backlog"),
    "ui_login_submit": ("登录", "Log in"),
    "ui_login_wrong": ("用户名或密码不正确，请重试", "wrong name or password; please try again"),
    "ui_login_throttled": (
        "尝试次数过多，请 {seconds} 秒后再试",
        "too many tries; please wait {seconds} s and try again",
    ),
    "ui_logout_title": ("要退出登录吗？", "Log out?"),
    "ui_logout_back": ("返回", "Back"),
    "ui_kiosk_take_photo": ("拍照", "Take a photo"),
    "ui_kiosk_retake": ("换一张照片", "New photo"),
    "ui_kiosk_hint": ("拍下展品，然后点一个问题", "Photograph an exhibit, then tap a question"),
    "ui_kiosk_placeholder": ("或者输入你自己的问题", "Or type your own question"),
    "ui_kiosk_ask": ("问一问", "Ask"),
    "ui_kiosk_turns_left": ("还可以问 {n} 个问题", "{n} more questions about this photo"),
    "ui_kiosk_max_turns": (
        "这张照片的问题已经问完啦，换一张照片继续吧",
        "That was the last question about this photo; take a new one to go on",
    ),
    "ui_kiosk_idle_warning": (
        "即将清空屏幕，触摸任意位置继续",
        "The screen will clear soon; touch to continue",
    ),
    "ui_kiosk_restart": ("重新开始", "Start over"),
    "ui_kiosk_need_photo": ("请先拍一张照片", "Take a photo first"),
    "ui_feed_waiting": ("正在等待新的解读…", "Waiting for new answers…"),
    "ui_feed_offline": ("连接中断，正在重新连接…", "Connection lost; reconnecting…"),
    "ui_tab_reports": ("报告", "Reports"),
    "ui_reports_empty": ("还没有生成报告", "No reports written yet"),
    "ui_reports_col_name": ("报告", "Report"),
    "ui_reports_col_period": ("统计期间", "Period"),
    "ui_reports_col_files": ("文件", "Files"),
    "ui_reports_next": ("下次生成：{time}", "next run: {time}"),
    "ui_reports_not_scheduled": ("未在运行的服务中排期", "not scheduled in a running service"),
    "ui_reports_last_failed": ("上次生成失败：{reason}", "last run failed: {reason}"),
    "ui_reports_file_html": ("网页", "Web page"),
    "ui_reports_file_markdown": ("Markdown 文本", "Markdown"),
    "ui_reports_file_csv": ("表格（CSV）", "Table (CSV)"),
    "ui_reports_file_png": ("图表", "Chart"),
    # The history's CSV export (GET /api/jobs/export.csv): headers, Chinese by default, English with ?lang=en
    "export_col_id": ("编号", "id"),
    "export_col_created": ("提交时间（{timezone}）", "submitted ({timezone})"),
    "export_col_finished": ("完成时间（{timezone}）", "finished ({timezone})"),
    "export_col_source": ("来源", "source"),
    "export_col_source_ref": ("来源标识", "source ref"),
    "export_col_file": ("文件", "file"),
    "export_col_question": ("问题", "question"),
    "export_col_answer": ("回答", "answer"),
    "export_col_ocr_text": ("识别文字", "OCR text"),
    "export_col_status": ("状态", "status"),
    "export_col_error": ("错误", "error"),
    "export_col_review_status": ("审核状态", "review status"),
    "export_col_correction": ("更正", "correction"),
    "export_col_reviewed_by": ("审核人", "reviewed by"),
    "export_col_reviewed_at": ("审核时间（{timezone}）", "reviewed ({timezone})"),
    # On-demand reports (the Reports tab's 「生成报告」)
    "report_range_too_long": (
        "期间共 {days} 天，一次最多生成 {limit} 天的报告",
        "the period has {days} days; one report covers at most {limit}",
    ),
    "report_write_failed": ("报告 {name} 生成失败：{reason}", "report {name} could not be written: {reason}"),
    # Pages for staff at work (issue 14): labels, the review tab's batches and shortcuts, reports on demand
    "ui_tabs_label": ("页面", "Sections"),
    "ui_history_search_label": ("搜索历史记录", "Search the history"),
    "ui_status_done": ("完成", "done"),
    "ui_review_sample_size": ("每次抽取", "Per batch"),
    "ui_review_next": ("再抽 {n} 条", "Next {n}"),
    "ui_review_shortcuts": (
        "快捷键：j 下一张、k 上一张，1 标为正确，e 编辑更正，Esc 退出编辑",
        "Shortcuts: j next card, k previous card, 1 mark correct, e edit the correction, Esc leave the box",
    ),
    "ui_review_correction_label": (
        "更正后的回答（原样保存即记为正确）",
        "Corrected answer (saved unchanged, it counts as correct)",
    ),
    "ui_review_saved_unchanged": ("内容未改动，已记为正确", "Unchanged: saved as correct"),
    "ui_reports_generate_title": ("生成报告", "Generate a report"),
    "ui_reports_generate": ("生成报告", "Generate report"),
    "ui_reports_default_period": (
        "默认期间：昨天（{date}，{timezone} 时间）",
        "Default period: yesterday ({date}, {timezone} time)",
    ),
    "ui_reports_generating": ("正在生成…", "Generating…"),
    "ui_reports_generated": ("已生成 {name}（{period}）：", "Written: {name} ({period}):"),
    "ui_feed_live": ("已连接，实时更新", "Connected: live"),
    # A job's own page (/jobs/{id})
    "ui_job_open": ("查看详情", "Details"),
    "ui_job_title": ("任务 #{id}", "Job #{id}"),
    "ui_job_back": ("返回历史记录", "Back to the history"),
    "ui_job_model": ("模型 {model} · 用时 {ms} 毫秒", "model {model} · {ms} ms"),
    "ui_job_pages": ("页面与识别框", "Pages and OCR boxes"),
    "ui_job_page": ("第 {n} 页", "Page {n}"),
    "ui_job_page_alt": ("第 {n} 页的扫描", "scan of page {n}"),
    "ui_job_legend": (
        "每个方框是识别出的一行文字；红框的置信度低于 {threshold}，请核对",
        "each box is one line the reader found; red boxes were read with confidence under {threshold}: check them",
    ),
    "ui_job_no_image": ("图片已不在（已清理或移走）", "the image is gone (cleaned up or moved)"),
    "ui_job_text_layer": (
        "这一页的文字取自 PDF 自带的文字层，没有识别框",
        "this page's text is the PDF's own text layer: there are no boxes",
    ),
    "ui_job_rotated": (
        "扫描件需顺时针旋转 {degrees}° 才是正向；方框画在原图上",
        "the scan reads upright turned {degrees}° clockwise; the boxes are drawn on the image as stored",
    ),
    "ui_job_ocr_lines": ("识别文字（逐行）", "OCR text, line by line"),
    "ui_job_confidence": ("置信度 {value}", "confidence {value}"),
    "ui_job_no_ocr": ("这项任务没有逐行识别结果", "this job has no OCR lines"),
    "ui_job_notes": ("说明", "Notes"),
    "ui_job_conversation": ("对话", "Conversation"),
    "ui_job_sidecars": ("附带文件", "Sidecar files"),
    "ui_job_sidecar_missing": ("（尚未写出）", "(not written yet)"),
    "ui_job_sidecars_none": ("只有文件夹任务才有附带文件", "only folder jobs have sidecar files"),
    "ui_job_reviewed_by": ("审核人：{who}（{time}）", "reviewed by {who} ({time})"),
    "ui_job_rerun": ("重新处理", "Run again"),
    "ui_job_rerun_hint": (
        "用当前的模型和设置再回答一次；原来的回答保留在历史记录中",
        "Answer it again with the current model and settings; the earlier answer stays in the history",
    ),
    "ui_job_rerun_done": ("已重新排队", "Queued again"),
    "ui_job_rerun_new": ("新任务 #{id}", "new job #{id}"),
}


def msg(code: str, **kwargs: object) -> Message:
    """Return the catalogue message `code`, filled with `kwargs`."""
    zh, en = _CATALOGUE[code]
    message = Message(code, zh, en)
    return message.format(**kwargs) if kwargs else message


def render(code: str | None, params: Mapping[str, object] | None, fallback: str | None = None) -> Message:
    """A stored error (code + parameters) as a message again; `fallback` (the stored text) when it cannot be.

    Records from before parameters were stored, or whose code left the catalogue, keep their stored text in
    both halves rather than failing to render.
    """
    if code and code in _CATALOGUE:
        try:
            return msg(code, **dict(params or {}))
        except (KeyError, IndexError, ValueError):
            pass
    text = fallback or ""
    zh, separator, en = text.partition(" / ")
    return Message(code or "unexpected", zh, en if separator else zh)


def all_codes() -> list[str]:
    """Every code in the catalogue (tests check each one formats in both languages)."""
    return sorted(_CATALOGUE)
