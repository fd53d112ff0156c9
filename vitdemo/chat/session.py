"""One user's chat: turns of (text, images, answer), kept in the UI's gr.State.

Gradio-free, so the chat tab, the API endpoint and the tests share the same logic:
adding a message (validated), streaming the answer into the last turn, regenerate,
undo, stop, and rendering the turns as Chatbot messages.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from vitdemo.chat import conversation
from vitdemo.core.engine import KEEP, Engine
from vitdemo.core.images import DEFAULT_MAX_PIXELS, open_image
from vitdemo.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class Turn:
    """A user message and the assistant's answer to it."""

    text: str  # the user's question
    image_paths: list[str] = field(default_factory=list)  # files shown in the chat window
    images: list[Any] = field(default_factory=list, repr=False)  # opened PIL images, same order
    answer: str = ""  # streamed in; "" until generation starts
    error: str | None = None  # a message shown instead of (or after) the answer
    note: str | None = None  # a hint shown under the answer (e.g. no image to look at)
    seed: int | None = None  # the sampling seed of the answer (None: greedy), shown to reproduce it


# An answer that ends before its first word (a sampled end-of-answer token, say) would show no
# reply at all, and so no seed to reproduce it: say what happened instead.
EMPTY_ANSWER_NOTE = ("The model ended its answer before its first word. Press Regenerate (with a temperature "
                     "above 0 it draws a new sample) or ask in other words.")
# The model answers a question without an image anyway (it guesses): say so beside the answer.
NO_IMAGE_HINT = ("There is no image in this conversation, so this answer is a guess: "
                 "upload an image (drop it on the message box) for the model to look at.")


class ChatSession:
    """Per-user chat history plus the event that the Stop button sets.

    A plain class, not a dataclass: Gradio serialises dataclass State values with
    dataclasses.asdict, which cannot copy the Event.
    """

    def __init__(self, turns: list[Turn] | None = None) -> None:
        self.turns: list[Turn] = turns if turns is not None else []
        self.stop_event = threading.Event()  # set by the Stop button, cleared per reply
        self.busy = False  # a reply is queued or streaming; the UI refuses edits meanwhile
        self.refused: Turn | None = None  # the last turn the model refused (too long...), removed from turns

    def __repr__(self) -> str:
        return f"ChatSession({len(self.turns)} turns, busy={self.busy})"

    def __deepcopy__(self, memo: dict) -> "ChatSession":
        # gr.State deep-copies its initial value per user; an Event cannot be copied.
        return ChatSession(turns=copy.deepcopy(self.turns, memo))

    # --- editing ---
    def add_user_message(self, text: str, files: Sequence[str] = (), *, max_images: int = 4,
                         max_pixels: int | None = None) -> Turn:
        """Validate and append a user turn; raises InputError/ImageError, leaving history as it was."""
        text = (text or "").strip()
        files = [str(f) for f in files or []]
        if not text:
            raise InputError("the message is empty: type a question" + (" about the image" if files else ""))
        if len(files) > max_images:
            raise InputError(f"{len(files)} images in one message; the limit is {max_images}")
        limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        images = [open_image(path, max_pixels=limit) for path in files]
        turn = Turn(text=text, image_paths=files, images=images)
        self.turns.append(turn)
        return turn

    def undo(self) -> Turn | None:
        """Remove and return the last turn (its text and images can go back into the textbox)."""
        return self.turns.pop() if self.turns else None

    def clear(self) -> None:
        self.turns.clear()

    def prepare_regenerate(self) -> None:
        """Forget the last answer so that `stream_reply` answers the last question again."""
        if not self.turns:
            raise InputError("nothing to regenerate: ask a question first")
        self.turns[-1].answer = ""
        self.turns[-1].error = None

    # --- model I/O ---
    def conversation(self) -> tuple[conversation.Conversation, list[Any]]:
        """The turns as a chat conversation (last turn unanswered) and its images in order."""
        conv: conversation.Conversation = []
        images: list[Any] = []
        for i, turn in enumerate(self.turns):
            conv.append(conversation.user_message(turn.text, len(turn.images)))
            images.extend(turn.images)
            if i < len(self.turns) - 1:
                conv.append(conversation.assistant_message(turn.answer))
        return conv, images

    def stream_reply(self, engine: Engine, gen: conversation.GenerationSettings, adapter: Any = KEEP) -> Iterator[str]:
        """Stream the answer to the last turn into it; yields the answer so far.

        `adapter`: this user's adapter choice (a folder, None = base; KEEP = the server's).

        Sampling (temperature > 0) with no seed draws a fresh one per call, so Regenerate
        gives a new sample; the seed used is kept on the turn to reproduce it.

        A request refused before any word (InputError: too long, unreadable) removes the
        turn (kept in `self.refused`), so later questions are not refused for it. Other
        errors (VitdemoError) propagate after being recorded on the turn; the session
        stays consistent so the user can retry, undo or go on.
        """
        if not self.turns:
            raise InputError("the conversation is empty: type a question")
        turn = self.turns[-1]
        turn.answer, turn.error, turn.note, turn.seed = "", None, None, None
        self.refused = None
        self.stop_event.clear()
        if gen.temperature > 0 and gen.seed is None:
            gen = dataclasses.replace(gen, seed=secrets.randbelow(2**31))
        turn.seed = gen.seed if gen.temperature > 0 else None
        conv, images = self.conversation()
        started = False
        try:
            for piece in conversation.stream_answer(engine, conv, images, gen, stop_event=self.stop_event,
                                                    adapter=adapter):
                started = True
                turn.answer += piece
                yield turn.answer
        except Exception as err:
            if isinstance(err, InputError) and not started:
                self.refused = self.turns.pop()  # never answered: it must not poison later questions
            else:
                turn.error = str(err)
            raise
        finally:
            turn.answer = turn.answer.strip()
        notes = []
        if not turn.answer and not self.stop_event.is_set():
            notes.append(EMPTY_ANSWER_NOTE)  # else the page shows no reply at all, and no seed
        if not images:
            notes.append(NO_IMAGE_HINT)
        turn.note = " ".join(notes) or None
        if self.stop_event.is_set():
            logger.info("generation stopped by the user after %d characters", len(turn.answer))

    def stop(self) -> None:
        self.stop_event.set()

    # --- display ---
    def chatbot_messages(self) -> list[dict[str, Any]]:
        """Messages for gr.Chatbot: each image as a file message, then the text."""
        messages: list[dict[str, Any]] = []
        for turn in self.turns:
            for path in turn.image_paths:
                messages.append({"role": "user", "content": {"path": path}})
            messages.append({"role": "user", "content": turn.text})
            shown = turn.answer
            if turn.error:
                shown = (shown + "\n\n" if shown else "") + f"⚠️ {turn.error}"
            if turn.note:
                shown = (shown + "\n\n" if shown else "") + f"ℹ️ {turn.note}"
            if turn.seed is not None and shown:
                shown += f"\n\n_seed {turn.seed}: enter it under Generation settings to get this answer again_"
            if shown or turn is not self.turns[-1]:
                messages.append({"role": "assistant", "content": shown})
        return messages


def history_to_session(history: Sequence[Any] | None, image_path: str | None, question: str, *,
                       max_images: int = 4, max_pixels: int | None = None) -> ChatSession:
    """Build a session for the API: earlier text turns + the image with the first question.

    `history` is a list of {"role": "user"|"assistant", "content": str} messages, or of
    [user, assistant] pairs. The image belongs to the first user message.
    """
    pairs: list[tuple[str, str]] = []
    for item in history or []:
        if isinstance(item, dict):
            role, content = item.get("role"), item.get("content")
            if not isinstance(content, str):
                raise InputError(f"history content must be text, got {type(content).__name__}")
            if role == "user":
                pairs.append((content, ""))
            elif role == "assistant":
                if not pairs or pairs[-1][1]:
                    raise InputError("history: an assistant message must follow a user message")
                pairs[-1] = (pairs[-1][0], content)
            else:
                raise InputError(f"history role must be 'user' or 'assistant', got {role!r}")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0] or ""), str(item[1] or "")))
        else:
            raise InputError("history must be a list of {role, content} messages or [user, assistant] pairs")
    session = ChatSession()
    files = [image_path] if image_path else []
    for text, reply in pairs:
        session.add_user_message(text, files, max_images=max_images, max_pixels=max_pixels)
        session.turns[-1].answer = reply
        files = []
    session.add_user_message(question, files, max_images=max_images, max_pixels=max_pixels)
    return session
